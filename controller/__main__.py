"""``python -m controller`` runs the operator (same flags as ``trellis operator``)."""

import sys

from controller.cli import main

if __name__ == "__main__":
    sys.exit(main(["operator", *sys.argv[1:]]))
