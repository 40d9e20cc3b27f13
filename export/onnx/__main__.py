import sys

from export.onnx.exporter import main

sys.exit(main())
