"""``python -m captum_gradeclip ...`` (and ``torchrun ... -m captum_gradeclip ...``): the
``captum-gradeclip`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
