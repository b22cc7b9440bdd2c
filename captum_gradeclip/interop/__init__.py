"""Interoperability with other evaluation packages (optional extras, imported lazily):
:mod:`.quantus` (Quantus 0.6: ``explain_func``, ``a_batch`` and ``s_batch`` adapters)."""
