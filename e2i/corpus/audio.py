"""The audio format e2i works in, defined once: the toy corpus writes it, the PaSST encoder and the
fine-tuning read it. No imports, so e2i.corpus and e2i.encoders can both depend on it (no torch, no ray).
"""

SAMPLE_RATE = 32000  # Hz, mono: PaSST's input rate (its AudioSet models were trained on 32 kHz log-mels)
