"""Where the tests find the repository and the data sets CI keeps beside the clone."""
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_MODELS = REPO.parent / "shared" / "models"
