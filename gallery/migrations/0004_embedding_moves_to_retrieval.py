# Embedding moved to the retrieval app (the upper layer). Its table stays: only the state moves,
# and retrieval.0004 takes it over under the same db_table.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0003_embedding_created_index'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name='Embedding')],
            database_operations=[],
        ),
    ]
