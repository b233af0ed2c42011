"""What every verb of ``clusiam-fast`` shares, torch-free: one-line errors and exit statuses
(:mod:`.errors`), ``--config`` files (:mod:`.config_file`) and argparse value types (:mod:`.types`)."""
