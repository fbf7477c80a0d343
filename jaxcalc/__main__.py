import sys

from jaxcalc.cli import main

sys.exit(main())
