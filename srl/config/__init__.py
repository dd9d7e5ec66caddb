"""Where the Hydra configs live and the ``${srl_root:}`` resolver (``paths``), and the checks every
entry point runs on a composed config before any work (``validation``)."""
