"""Which elements read from a stored file are attributes of its data set.

A parser hands back every element it meets, and some are no attribute:
- group lengths (gggg,0000), retired (PS3.5 §7.2), whose values go stale
  once a data set is encoded again;
- file meta (0002,eeee) and command (0000,eeee) elements, groups reserved
  for the file format and for DIMSE messages (PS3.5 §7.1), which legacy
  toolkits leave in files; trailing NUL padding also reads as (0000,0000);
- item and delimitation tags (FFFE,eeee), which frame sequences (PS3.5 §7.5)
  and are stray wherever they are read as an element.

The metadata and a re-encoded copy of an instance hold only the attributes.
"""

_COMMAND_GROUP = 0x0000
_FILE_META_GROUP = 0x0002
_ITEM_GROUP = 0xFFFE


def is_attribute(tag: int) -> bool:
    return tag & 0xFFFF != 0 and tag >> 16 not in (_COMMAND_GROUP, _FILE_META_GROUP, _ITEM_GROUP)
