"""The silo room: the ClientApp (:mod:`~fedmtl.app.silo.client_app`), the one silo toolkit every
runtime uses (:mod:`~fedmtl.app.silo.toolkit`), a node's config and rows
(:mod:`~fedmtl.app.silo.node`) and the batched trainer of the vectorized runtime
(:mod:`~fedmtl.app.silo.batch`)."""
