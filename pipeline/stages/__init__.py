"""One module per ``dvc.yaml`` stage, each a plain function and a thin ``run()``; none imports another."""
