import sys

from export.coreml.exporter import main

sys.exit(main())
