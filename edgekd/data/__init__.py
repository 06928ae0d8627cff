"""Task data: loading splits from local files, the hub or scikit-learn, and batching them."""
from .loading import Split, TaskData, load_data  # noqa: F401
