"""Networks of the paper, registered with timm (`timm.create_model(name, **switches)`)."""
from repro.models import inception, mlp  # noqa: F401
from repro.models.counting import count_macs  # noqa: F401
from repro.models.fold import fold_bn  # noqa: F401
