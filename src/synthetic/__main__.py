"""`python -m src.synthetic`: generate a benchmark (src.synthetic.generator's CLI)."""
import sys

from src.synthetic.generator import main

sys.exit(main())
