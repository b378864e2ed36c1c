"""The generated FathomNet-shaped benchmark: research scaffolding, apart from the real-data I/O of src/data.

generator (frames, COCO files, solution), shapes (the drawn animals), skeleton (the real data set's structure,
shipped in fathomnet_skeleton/) and error_profile (how a model errs, for the realism report). Nothing a model
run on real data needs imports this package, and Kaggle packages leave it out.
"""
