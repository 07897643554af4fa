import sys

from mnist_cnn.cli import main

# Guarded: a sweep's cluster on this machine starts its workers by importing this module again.
if __name__ == "__main__":
    sys.exit(main())
