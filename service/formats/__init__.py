"""One module per upload format (hdf5, npz, csvtext) and what they share (common).

service.uploads is the entry point; these modules are its parts.
"""
