import sys

from jiji_dns.main import main

sys.exit(main())
