"""The MySQL wire protocol as both sides of the proxy speak it, with no knowledge of sessions,
grants or the database side: packet framing and codecs (`wire`), text result rows (`rows`),
asyncio transport helpers (`transport`). `protocol` (the client side), `upstream` (the database
side) and `audit` import from here, never from each other's internals."""
