import sys

from export.executorch.exporter import main

sys.exit(main())
