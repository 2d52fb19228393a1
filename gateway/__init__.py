"""disrouter.gateway: an OpenAI-compatible HTTP front door to the mesh (`disrouter gateway`).

Stateless: each request becomes one Query published to the ingress (or to one tier's subject),
so any number of gateway replicas can run behind one Service. Needs the ``gateway`` extra.
"""
