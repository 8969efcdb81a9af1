# examples/django_settings.py: what a Django project's settings.py needs
EMAIL_BACKEND = "service.contrib.django.EmailBackend"
# The queue is $REDIS_URL and $EMAIL_QUEUE, as the worker reads them, unless these are set:
# EMAIL_QUEUE_REDIS_URL = "rediss://user:password@host:6379"
# EMAIL_QUEUE_NAME = "emails"
# EMAIL_QUEUE_PRIORITY = "normal"   # the lane of every message; or per connection:
# send_mail(..., connection=get_connection(priority="high"))
