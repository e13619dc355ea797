"""The code layout: how talks become model inputs. One definition, imported by the ETL, the model,
the metrics, the swap and the serving operators.

A talk's code is its catalog position plus ``RESERVED``: code 0 is padding, 1 null, 2
out-of-vocabulary, and the talk at catalog position ``i`` has code ``i + RESERVED``. Row ``code`` of
the item table holds that talk's vector. The ETL's list column (the Transformers4Rec input) is
``ITEM_LIST``.

This module imports nothing. The serving operators import these names; a self-contained export
pickles the operators by value, and cloudpickle then stores the values (plain ints and strings),
so the server needs no ``gtcrec`` (tests/unit/test_operators.py, ``self_contained``).
"""
PAD, NULL, OOV = 0, 1, 2
RESERVED = 3  # codes below this are not talks
FIRST_CODE = RESERVED  # the code of the talk at catalog position 0
ITEM_COL = "item_id"  # the ETL's per-click column
ITEM_LIST = "item_id-list"  # the ETL's per-session list column: the model input


def code(position: int) -> int:
    """The code of the talk at catalog ``position``."""
    return position + RESERVED
