"""What the server tells about itself: Prometheus metrics (``metrics``, read at scrape time from
the services' ``statistics()``), metrics shared between the processes of ``--workers``
(``metrics_share``), and the garbage-collection policy of a long-lived fleet (``gcpolicy``)."""
