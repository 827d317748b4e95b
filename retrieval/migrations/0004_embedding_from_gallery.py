# Embedding moved here from the gallery app. The table gallery_embedding, its constraint and indexes
# stay as they are: only Django's state changes (no data migration).

import django.db.models.deletion
import pgvector.django.vector
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0004_embedding_moves_to_retrieval'),
        ('retrieval', '0003_index_kind_help'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Embedding',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('space', models.CharField(choices=[('semantic', 'Semantic (meaning)'), ('content', 'Content (look)')], max_length=16)),
                        ('model_key', models.CharField(max_length=100)),
                        ('vector', pgvector.django.vector.VectorField()),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('image', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='embeddings', to='gallery.image')),
                    ],
                    options={
                        'db_table': 'gallery_embedding',
                        'indexes': [models.Index(fields=['model_key', 'space'], name='embedding_model_space'), models.Index(fields=['model_key', 'space', 'created_at'], name='embedding_model_space_created')],
                        'constraints': [models.UniqueConstraint(fields=('image', 'space', 'model_key'), name='embedding_unique_per_model')],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
