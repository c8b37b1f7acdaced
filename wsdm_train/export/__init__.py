"""The last two stages: the fold adapters merged into the base model, and the merged model quantized.

:mod:`.adapters` reads and combines the fold adapters (tensors only), :mod:`.merge` merges them
into the base weights, :mod:`.quantize` runs GPTQ through llm-compressor and :mod:`.gptq` writes
the GPTQ v1 form of its checkpoint.
"""
