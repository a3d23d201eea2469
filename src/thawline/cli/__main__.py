import sys

from thawline.cli import main

sys.exit(main())
