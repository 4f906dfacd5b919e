import sys

from npcai.cli import main

sys.exit(main())
