"""The paper's evaluation (its Section 3): :mod:`.metrics`, :mod:`.assess`
(the sVAE and The Cannon side by side, the three claims), :mod:`.figures`,
:mod:`.report` and :mod:`.demo` (``xpsvae demo``).
"""
