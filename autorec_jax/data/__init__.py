"""Host-side data: ratings containers, dataset sources, splits and batch planning (NumPy)."""

from autorec_jax.data.ratings import Ratings, RowMatrix, row_matrix, to_dense

__all__ = ["Ratings", "RowMatrix", "row_matrix", "to_dense"]
