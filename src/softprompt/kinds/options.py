"""Each kind's own option group, in one place that both `config.py` (which composes them into `TrainConfig`) and
the kind table (which refuses another kind's option in one line) read. A kind declares its options in its folder's
`options.py`."""

from __future__ import annotations

from ..declare import OptionGroup
from .clip import options as clip
from .encoder import options as encoder
from .speech import options as speech
from .vision import options as vision

KIND_OPTIONS: dict[str, OptionGroup] = {group.name: group for group in (
    encoder.OPTIONS, vision.OPTIONS, clip.OPTIONS, speech.OPTIONS)}
