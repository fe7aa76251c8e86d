"""``python -m colorizer.bench``: see :mod:`colorizer.bench`."""

from colorizer.bench import main

main()
