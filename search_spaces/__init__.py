"""Search spaces (`hwnas.search_spaces`, folder `search_spaces/`): `SubnetConfig` (one SubTransformer) and
`SearchSpace` (HAT's gene choices)."""

from hwnas.search_spaces._config import SubnetConfig
from hwnas.search_spaces._space import Gene, SearchSpace, get_space, list_spaces

__all__ = ["Gene", "SearchSpace", "SubnetConfig", "get_space", "list_spaces"]
