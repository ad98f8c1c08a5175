"""``python -m llm_finetune``: same as the ``llm-finetune`` console script (used under torchrun)."""

import sys

from .cli import main

sys.exit(main())
