"""Files: atomic writes, locks, the .npz format, datasets and data files, the progress bar."""
