"""SimCLR heads: the projection head g(.) and the supervised (linear) head.

The classes live in :mod:`simclr_tf.models.projection_head` and
:mod:`simclr_tf.models.supervised_head` (one public class per file) and are
re-exported here, which is the import path the rest of the package uses.
"""

from simclr_tf.models.projection_head import PROJ_HEAD_MODES, ProjectionHead
from simclr_tf.models.supervised_head import SupervisedHead

__all__ = ["PROJ_HEAD_MODES", "ProjectionHead", "SupervisedHead"]
