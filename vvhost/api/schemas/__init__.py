"""Response models: what every route answers, shared by the server (each route's
``response_model``) and :class:`vvhost.client.Client` (which parses every answer
with the same model).  Split by area; :mod:`.common` holds the base, errors and
the page of a listing."""
