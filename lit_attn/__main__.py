"""``python -m lit_attn fit | validate | test | predict | sft`` — see lit_attn/cli.py."""

import sys

from lit_attn.cli import main

if __name__ == "__main__":
    sys.exit(main())
