"""The sVAE itself: :mod:`.network` (encoder, decoder, scatter head, the loss),
:mod:`.preprocess` (standardisation), :mod:`.trainer`, :mod:`.graphstep`
(one CUDA graph a step) and :mod:`.stream` (stores larger than memory).

Imports :mod:`xpsvae.core` and :mod:`xpsvae.io`.
"""
