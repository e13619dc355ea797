"""The code layout has one definition (gtcrec.layout) and the modules that use it agree."""
import ast
import re
from pathlib import Path

from gtcrec import etl, layout, metrics
from gtcrec.serving import operators as ops

PACKAGE = Path(layout.__file__).parent


def test_one_layout_everywhere():
    assert (layout.PAD, layout.NULL, layout.OOV, layout.RESERVED) == (0, 1, 2, 3)
    assert layout.code(0) == layout.FIRST_CODE == layout.RESERVED
    assert (etl.RESERVED, etl.OOV, etl.ITEM_LIST) == (layout.RESERVED, layout.OOV, layout.ITEM_LIST)
    assert (ops.FIRST_CODE, ops.OOV, ops.NULL, ops.PAD, ops.ITEM_LIST) == (
        layout.FIRST_CODE, layout.OOV, layout.NULL, layout.PAD, layout.ITEM_LIST)
    assert (metrics.N_RESERVED, metrics.ITEM_LIST) == (layout.RESERVED, layout.ITEM_LIST)


def test_layout_imports_nothing():
    """The self-contained serving export relies on it: the operators import it and are pickled by value."""
    tree = ast.parse((PACKAGE / "layout.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_nothing_redeclares_the_layout():
    """No module of the package assigns the reserved count or the list column name itself."""
    pattern = re.compile(r'^\s*(RESERVED|N_RESERVED|FIRST_CODE|OOV|ITEM_LIST|ITEM_COL)\s*=\s*(\d|")', re.M)
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "layout.py" and pattern.search(p.read_text())]
    assert offenders == []
