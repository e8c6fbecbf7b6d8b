"""``orthopatch serve``: the base model, its patches and gated patches behind the OpenAI API.

Layout: ``config`` (settings), ``protocol`` (the API's shapes), ``jobs`` (one request's sampling, stop strings and
text events), ``decoding`` (one batch's decoding loop), ``models`` (what is served and the per-row routing),
``engine`` (the batching thread and its bounded queue), ``backends`` (local engine, or an upstream engine behind
the gates), ``metrics`` (Prometheus), ``app`` (the HTTP routes), ``run`` (start and drain).
"""
