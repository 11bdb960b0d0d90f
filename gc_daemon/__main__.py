import sys

from gc_daemon.cli import main

sys.exit(main())
