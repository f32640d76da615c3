"""`python -m recipes NAME [flags]` is `keras-mcv run NAME [flags]`."""

import sys

from keras_mcv.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
