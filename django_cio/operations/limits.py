"""The Track API's limits (Customer.io docs, "Limits"); sizes are UTF-8 bytes."""

MAX_ID_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
# People per manual segment request.
MAX_SEGMENT_PEOPLE = 1000
# An object's (or a relationship's) attributes together.
MAX_OBJECT_ATTRIBUTES_BYTES = 100_000
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
# A page view's name is its URL; the docs give no separate limit, so URLs get the value limit.
MAX_PAGE_URL_BYTES = 1000
# v2: one op (an /entity body or a batch item) must stay under 32 KB, a batch under 500 KB.
# Decimal kilobytes: the stricter reading.
MAX_V2_OP_BYTES = 32_000
MAX_BATCH_BYTES = 500_000
# Not documented; FCM tokens run past 150 bytes, so tokens get the attribute value limit.
MAX_DEVICE_TOKEN_BYTES = 1000
PLATFORMS = ("ios", "android")
# Transactional messages (App API): recipients across to, cc and bcc; attachments in all
# (decoded; "less than 2 MB"); the request without its attachments.
MAX_RECIPIENTS = 15
MAX_ATTACHMENTS_BYTES = 2_000_000
MAX_MESSAGE_BYTES = 1_000_000
# Nesting past this is a mistake (or a cycle), not customer data.
MAX_DEPTH = 32
# Unix seconds stay below this until the year 5138; bigger looks like milliseconds.
MAX_TIMESTAMP = 10**11
MAX_INT = 2**63
