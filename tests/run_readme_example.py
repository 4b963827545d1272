"""Runs the Python example of README.md exactly as written (`make smoke` calls this after
`make lm-pretrain PRESET=tiny`)."""

import re
import shutil
import sys
from pathlib import Path

readme = Path(__file__).resolve().parent.parent / 'README.md'
blocks = re.findall(r'```python\n(.*?)```', readme.read_text(), re.S)
if not blocks:
    sys.exit('README.md has no python example')
# The example saves into runs/my-clf, and save() refuses an existing folder: clear the last smoke run's copy.
shutil.rmtree('runs/my-clf', ignore_errors=True)
exec(compile(blocks[0], f'{readme}:python-example', 'exec'), {'__name__': '__main__'})
print('README example: OK')
