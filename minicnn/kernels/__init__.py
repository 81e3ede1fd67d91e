"""Array kernels below the layers: im2col/col2im, the CUDA sources, BLAS thread control and the
C allocator's tuning. Imports only ``minicnn.core``."""
