from autoprompt.cli import main
import sys
sys.exit(main())
