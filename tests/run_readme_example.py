"Runs the Python example of README.md exactly as written (`make smoke` calls this after `make lm-pretrain PRESET=tiny`)."
import re
import sys
from pathlib import Path

readme = Path(__file__).resolve().parent.parent / 'README.md'
blocks = re.findall(r'```python\n(.*?)```', readme.read_text(), re.S)
if not blocks:
    sys.exit('README.md has no python example')
exec(compile(blocks[0], f'{readme}:python-example', 'exec'), {'__name__': '__main__'})
print('README example: OK')
