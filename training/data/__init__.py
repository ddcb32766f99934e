"""What the pipeline reads: NIH metadata and labels, image files, patient-wise splits,
the image cache, datasets with their augmentation and sampling, prediction files and a
teacher's soft targets, and one run's data (:func:`training.data.run_data.load_data`)."""
