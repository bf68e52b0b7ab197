"""`python -m onnx2snn.cli`: the command line."""
import sys

from . import main

sys.exit(main())
