//! The tonic implementation of `user.UserService`: request checks, then the store, then the change feed.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::proto::user::user_service_server::UserService;
use crate::proto::user::{
    BatchCreateUsersResponse, CreateUserRequest, DeleteUserRequest, GetUserRequest, GetUserResponse, ListUsersRequest,
    ListUsersResponse, UpdateUserRequest, User, WatchUsersRequest,
};
use crate::user_service::error::ServiceError;
use crate::user_service::events::{ChangeFeed, WatchStream};
use crate::user_service::filter::{Filter, fold};
use crate::user_service::page_token;
use crate::user_service::password::PasswordHasher;
use crate::user_service::store::{Store, StoreError};
use crate::user_service::validate::{self, Violation};

pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const MAX_PAGE_SIZE: i32 = 1000;
pub const MAX_BATCH_ITEMS: usize = 1000;

/// The UserService: validation, pagination and filters over a [`Store`], with changes fed to watchers.
#[derive(Clone)]
pub struct UserServiceImpl {
    store: Arc<dyn Store>,
    hasher: PasswordHasher,
    feed: Arc<ChangeFeed>,
}

impl UserServiceImpl {
    pub fn new(store: Arc<dyn Store>, hasher: PasswordHasher, feed: Arc<ChangeFeed>) -> Self {
        Self { store, hasher, feed }
    }

    async fn list(&self, request: ListUsersRequest) -> Result<ListUsersResponse, ServiceError> {
        let page_size = match request.page_size {
            size if size < 0 => {
                return Err(ServiceError::invalid_field("page_size", format!("must not be negative, got {size}")));
            }
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let filter = Filter::parse(&request.filter)?;
        let after_id =
            if request.page_token.is_empty() { 0 } else { page_token::decode(&request.page_token, &request.filter)? };
        let limit = u32::try_from(page_size).unwrap_or(1);
        let mut users = self.store.list_users(&filter, after_id, limit + 1).await?;
        let next_page_token = if users.len() > limit as usize {
            users.truncate(limit as usize);
            users.last().map(|last| page_token::encode(last.id, &request.filter)).unwrap_or_default()
        } else {
            String::new()
        };
        let total_count = self.store.count_users(&filter).await?;
        Ok(ListUsersResponse { users, next_page_token, total_count: i32::try_from(total_count).unwrap_or(i32::MAX) })
    }

    async fn create(&self, request: CreateUserRequest) -> Result<User, ServiceError> {
        validate::create_request(&request, "").map_err(ServiceError::invalid)?;
        let hash = self.hasher.hash(request.password.clone()).await?;
        let created = self.store.create_users(vec![validate::new_user(request, hash)]).await.map_err(|e| match e {
            // A single create has no batch index to report.
            StoreError::EmailTaken { email, .. } => StoreError::EmailTaken { email, index: None },
            other => other,
        })?;
        self.feed.wake();
        created.into_iter().next().ok_or_else(|| StoreError::Corrupt("insert returned no user".into()).into())
    }

    async fn update(&self, request: UpdateUserRequest) -> Result<User, ServiceError> {
        let (id, patch) = validate::update_request(&request).map_err(ServiceError::invalid)?;
        if patch.is_empty() {
            return Ok(self.store.get_user(id).await?);
        }
        let user = self.store.update_user(id, patch).await?;
        self.feed.wake();
        Ok(user)
    }

    /// Reads the whole client stream (validating each item as it arrives, so a bad item fails the batch
    /// without reading the rest), hashes the passwords, then stores everything in one transaction.
    async fn batch_create(&self, mut requests: Streaming<CreateUserRequest>) -> Result<Vec<User>, Status> {
        let mut items = Vec::new();
        let mut emails: HashMap<String, usize> = HashMap::new();
        while let Some(item) = requests.message().await? {
            let index = items.len();
            if index == MAX_BATCH_ITEMS {
                return Err(ServiceError::invalid_field(
                    "requests",
                    format!("a batch holds at most {MAX_BATCH_ITEMS} items; nothing was stored"),
                )
                .into());
            }
            if let Err(violations) = validate::create_request(&item, &format!("requests[{index}].")) {
                return Err(batch_item_error(index, violations).into());
            }
            if let Some(first) = emails.insert(fold(&item.email), index) {
                let violation =
                    Violation::new(format!("requests[{index}].email"), format!("repeats the email of item {first}"));
                return Err(batch_item_error(index, vec![violation]).into());
            }
            items.push(item);
        }
        let parallel = std::thread::available_parallelism().map_or(2, usize::from);
        let new_users: Vec<_> = futures::stream::iter(items)
            .map(|item| async {
                let hash = self.hasher.hash(item.password.clone()).await?;
                Ok::<_, ServiceError>(validate::new_user(item, hash))
            })
            .buffered(parallel)
            .try_collect()
            .await?;
        if new_users.is_empty() {
            return Ok(Vec::new());
        }
        let created = self.store.create_users(new_users).await.map_err(ServiceError::from)?;
        self.feed.wake();
        Ok(created)
    }
}

fn batch_item_error(index: usize, violations: Vec<Violation>) -> ServiceError {
    let details = violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
    ServiceError::InvalidArgument {
        message: format!("batch item {index} is invalid: {details}; nothing was stored"),
        violations,
    }
}

#[tonic::async_trait]
impl UserService for UserServiceImpl {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<GetUserResponse>, Status> {
        let id = validate::user_id(request.get_ref().id, "id").map_err(|v| ServiceError::invalid(vec![v]))?;
        let user = self.store.get_user(id).await.map_err(ServiceError::from)?;
        Ok(Response::new(GetUserResponse { user: Some(user) }))
    }

    async fn list_users(&self, request: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn create_user(&self, request: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    async fn update_user(&self, request: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        Ok(Response::new(self.update(request.into_inner()).await?))
    }

    async fn delete_user(&self, request: Request<DeleteUserRequest>) -> Result<Response<pbjson_types::Empty>, Status> {
        let id = validate::user_id(request.get_ref().id, "id").map_err(|v| ServiceError::invalid(vec![v]))?;
        self.store.delete_user(id).await.map_err(ServiceError::from)?;
        self.feed.wake();
        Ok(Response::new(pbjson_types::Empty {}))
    }

    type WatchUsersStream = WatchStream;

    async fn watch_users(
        &self,
        request: Request<WatchUsersRequest>,
    ) -> Result<Response<Self::WatchUsersStream>, Status> {
        let request = request.into_inner();
        if request.since_revision < 0 {
            return Err(ServiceError::invalid_field(
                "since_revision",
                format!("must not be negative, got {}", request.since_revision),
            )
            .into());
        }
        let filter = Filter::parse(&request.filter).map_err(ServiceError::from)?;
        if request.since_revision > 0 {
            // Refuse a position outside the change log before the stream starts: as a plain status, not an
            // error after a successful start, so clients (an EventSource behind the gateway, say) stop rather
            // than reconnect with the same position forever. The watcher checks again as it reads.
            self.store.changes_after(request.since_revision, 1).await.map_err(ServiceError::from)?;
        }
        Ok(Response::new(self.feed.watch(filter, request.since_revision)))
    }

    async fn batch_create_users(
        &self,
        request: Request<Streaming<CreateUserRequest>>,
    ) -> Result<Response<BatchCreateUsersResponse>, Status> {
        let users = self.batch_create(request.into_inner()).await?;
        Ok(Response::new(BatchCreateUsersResponse { users }))
    }
}
